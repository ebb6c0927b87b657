//! The real `coordinator` and `worker` binaries as separate processes on
//! loopback, training on the committed MNIST slice.

use std::process::Command;
use std::time::Duration;

use integration_tests::process::{
    address, assert_same_as_local, assert_verifies, checkpointed_run_dir, coordinator, drain,
    expect_all_success, expect_failure, expect_refusal, expect_success, expect_success_with_output,
    lines, run_dir, spawn_coordinator_command, stderr_of, tempdir, wait_exit, worker_process,
    Guard,
};
use integration_tests::{binary, fixture_dir};

#[test]
fn coordinator_and_four_worker_processes_train_and_all_exit_0() {
    let (dir, out) = run_dir("four-workers");
    let mut coord = coordinator(&["--workers", "4", "--epochs", "3"], &out);
    let rx = lines(&mut coord);
    let addr = address(&rx);
    let mut workers: Vec<Guard> = (0..4)
        .map(|i| worker_process(&addr, &format!("proc-{i}"), &[]))
        .collect();
    let output =
        expect_success_with_output(&mut coord, &rx, Duration::from_secs(120), "coordinator");
    let epoch = output
        .iter()
        .find(|l| l.starts_with("Epoch 2: "))
        .expect("a line for the third epoch");
    let correct: usize = epoch["Epoch 2: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(epoch.contains(" / 200"), "{epoch}");
    // Chance is 20 / 200; three epochs of the 1,000-sample slice reach 100-130.
    assert!(correct > 80, "training should beat chance by far: {epoch}");
    assert!(
        output
            .iter()
            .any(|l| l.starts_with("Done: best test accuracy")),
        "{output:?}"
    );
    expect_all_success(&mut workers, Duration::from_secs(30), "worker");
    let model = common::model_file::load(&out).expect("saved model loads");
    assert_eq!(model.sizes, vec![784, 30, 10]);

    assert_same_as_local(&dir, &out, 4, 3, "cluster and --local model files differ");
    assert_verifies(&out);
}

/// SIGKILL a worker process after the first epoch, start a replacement, SIGKILL
/// that one after the second epoch, and let another exit mid-step at a fixed
/// step: the run finishes with the model file of the undisturbed run, byte for byte.
#[test]
fn sigkilled_and_exiting_worker_processes_cost_only_time() {
    let (dir, out) = run_dir("kill");
    let mut coord = coordinator(
        &["--workers", "4", "--epochs", "4", "--shard-timeout", "5"],
        &out,
    );
    let rx = lines(&mut coord);
    let addr = address(&rx);
    let mut victim = worker_process(&addr, "victim", &[]);
    let mut quitter = worker_process(&addr, "quitter", &["--exit-at-step", "250"]);
    let mut healthy = [
        worker_process(&addr, "healthy-0", &[]),
        worker_process(&addr, "healthy-1", &[]),
    ];
    // Kill as soon as the first epoch is reported: training is then under way.
    let epoch0 = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("an epoch line");
    assert!(epoch0.starts_with("Epoch 0: "), "{epoch0}");
    victim.0.kill().expect("SIGKILL the victim");
    let mut second_victim = worker_process(&addr, "victim-2", &[]);
    let epoch1 = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a second epoch line");
    assert!(epoch1.starts_with("Epoch 1: "), "{epoch1}");
    second_victim.0.kill().expect("SIGKILL the second victim");
    let output =
        expect_success_with_output(&mut coord, &rx, Duration::from_secs(120), "coordinator");
    assert!(
        output.iter().any(|l| l.starts_with("Faults absorbed: ")),
        "the summary reports the recovery: {output:?}"
    );
    let quit = wait_exit(&mut quitter, Duration::from_secs(30), "quitter");
    assert_eq!(
        quit.code(),
        Some(3),
        "--exit-at-step exits with status 3: {}",
        stderr_of(&mut quitter)
    );
    expect_all_success(&mut healthy, Duration::from_secs(30), "healthy worker");
    assert_same_as_local(
        &dir,
        &out,
        4,
        4,
        "disturbed run differs from the undisturbed one",
    );
}

/// Kill -9 the coordinator mid-epoch, restart it with --resume on the same
/// port: the workers reconnect and the final model is byte-identical to an
/// uninterrupted run's.
#[test]
fn coordinator_killed_mid_epoch_resumes_exactly() {
    let (dir, out, ck) = checkpointed_run_dir("resume");
    let ck_flags = [
        "--checkpoint",
        ck.to_str().unwrap(),
        "--checkpoint-every",
        "7",
    ];
    // Long enough never to finish on its own: the kill, not the speed of
    // the machine, decides where the first run stops.
    let mut first = coordinator(
        &[&["--workers", "2", "--epochs", "100000"][..], &ck_flags].concat(),
        &out,
    );
    let rx = lines(&mut first);
    let addr = address(&rx);
    let mut workers = [
        worker_process(&addr, "w0", &[]),
        worker_process(&addr, "w1", &[]),
    ];
    let epoch1 = rx
        .recv_timeout(Duration::from_secs(60))
        .and_then(|_| rx.recv_timeout(Duration::from_secs(60)));
    assert!(epoch1.expect("two epoch lines").starts_with("Epoch 1: "));
    first.0.kill().expect("SIGKILL the coordinator"); // mid-epoch, between checkpoints or not
    first.0.wait().unwrap();
    let saved =
        coordinator::checkpoint::load(&ck).expect("a checkpoint was written before the kill");
    assert!(saved.position.epoch >= 2, "{:?}", saved.position);
    // Two more epochs after the one the checkpoint is in.
    let epochs = saved.position.epoch + 2;

    // The resumed coordinator listens where the first did (tokio binds with
    // SO_REUSEADDR), so the same worker processes reconnect to it.
    let listen = ["--listen", &addr, "--resume", ck.to_str().unwrap()];
    let epochs_flag = epochs.to_string();
    let mut second = coordinator(
        &[
            &["--workers", "2", "--epochs", &epochs_flag][..],
            &listen,
            &ck_flags,
        ]
        .concat(),
        &out,
    );
    let rx = lines(&mut second);
    expect_success(&mut second, Duration::from_secs(120), "resumed coordinator");
    // The resume path ran: only the epochs from the checkpoint's on were
    // trained, not a fresh run from epoch 0 (which would give the same bytes).
    let trained: Vec<String> = drain(&rx)
        .into_iter()
        .filter(|l| l.starts_with("Epoch "))
        .collect();
    let expected: Vec<String> = (saved.position.epoch..epochs)
        .map(|e| format!("Epoch {e}: "))
        .collect();
    assert_eq!(
        trained
            .iter()
            .map(|l| &l[..expected[0].len().min(l.len())])
            .collect::<Vec<_>>(),
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "{trained:?}"
    );
    expect_all_success(&mut workers, Duration::from_secs(60), "worker");
    assert_same_as_local(
        &dir,
        &out,
        2,
        epochs,
        "resumed run differs from the uninterrupted one",
    );

    // Resuming with other flags is refused, naming the difference.
    expect_refusal(
        Command::new(binary("coordinator"))
            .args([
                "--seed",
                "3",
                "--epochs",
                &epochs_flag,
                "--eta",
                "0.5",
                "--resume",
                ck.to_str().unwrap(),
            ])
            .arg("--data-dir")
            .arg(fixture_dir()),
        "made with --eta 3, but the flags say 0.5",
    );
}

#[test]
fn one_command_cluster_with_spawned_workers() {
    let (dir, out, ck) = checkpointed_run_dir("spawned");
    // On two runtime threads (as large steps get by default): the same bits.
    let flags = [
        "--workers",
        "2",
        "--spawn-workers",
        "--threads",
        "2",
        "--epochs",
        "1",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--auto-resume",
    ];
    let mut coord = coordinator(&flags, &out);
    let rx = lines(&mut coord);
    let output =
        expect_success_with_output(&mut coord, &rx, Duration::from_secs(120), "coordinator");
    let stderr = stderr_of(&mut coord);
    assert!(
        output.iter().any(|l| l.starts_with("Epoch 0: ")),
        "{output:?}"
    );
    assert!(
        stderr.contains("local workers exited clean=2"),
        "both spawned workers exit 0: {stderr}"
    );
    assert_same_as_local(&dir, &out, 2, 1, "two runtime threads train other bits");

    // Restarted by a supervisor with the same flags: --auto-resume finds the
    // finished checkpoint, trains nothing and saves the same model again.
    let again = dir.join("again.safetensors");
    let mut coord = coordinator(&flags, &again);
    let rx = lines(&mut coord);
    let output = expect_success_with_output(
        &mut coord,
        &rx,
        Duration::from_secs(120),
        "restarted coordinator",
    );
    assert!(
        output
            .iter()
            .any(|l| l.contains("already holds all 1 epochs")),
        "{output:?}"
    );
    let meta = |p: &std::path::Path| common::model_file::load_with_metadata(p).unwrap().1;
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap(),
        "the restart saved another model: {:?} vs {:?}",
        meta(&out),
        meta(&again)
    );
}

#[test]
fn bad_flags_and_bad_data_give_clear_errors_and_exit_nonzero() {
    let dir = tempdir("bad-input");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--sizes".into(), "100,30,10".into()],
            "MNIST needs 784 inputs and 10 outputs",
        ),
        (
            vec!["--eta".into(), "0".into()],
            "--eta 0: must be finite and > 0",
        ),
        (
            vec!["--batch-size".into(), "0".into()],
            "--batch-size 0: must be at least 1",
        ),
    ];
    for (i, (flags, want)) in cases.iter().enumerate() {
        let stderr = expect_refusal(Command::new(binary("coordinator")).args(flags), want);
        assert!(!stderr.contains("panicked"), "case {i}: {stderr}");
    }
    // A data directory whose training images file has a bad magic number.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        data.join("train-images.idx3-ubyte.gz"),
        [0, 0, 8, 1, 0, 0, 0, 0],
    )
    .unwrap();
    expect_refusal(
        Command::new(binary("coordinator"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data),
        "train-images.idx3-ubyte.gz: bad magic number 2049",
    );
    // A worker with nothing to connect to gives up after its retry budget, saying where it tried.
    expect_refusal(
        Command::new(binary("worker")).args([
            "--connect",
            "http://127.0.0.1:9",
            "--retry-for",
            "0.3",
        ]),
        "coordinator at http://127.0.0.1:9 unreachable",
    );
    expect_refusal(
        Command::new(binary("worker")).args(["--connect", "not a url"]),
        "invalid coordinator address",
    );
}

/// SIGTERM (what Kubernetes and process managers send) stops the coordinator
/// cleanly: a checkpoint is written, the workers are told to shut down, and a
/// resume from it ends with the uninterrupted run's model.
#[test]
fn sigterm_checkpoints_and_the_run_resumes_exactly() {
    let (dir, out, ck) = checkpointed_run_dir("sigterm");
    let ck_flag = ["--checkpoint", ck.to_str().unwrap()];
    let mut first = coordinator(
        &[
            &["--workers", "1", "--spawn-workers", "--epochs", "100000"][..],
            &ck_flag,
        ]
        .concat(),
        &out,
    );
    let rx = lines(&mut first);
    let _address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("address line");
    let epoch0 = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("an epoch line");
    assert!(epoch0.starts_with("Epoch 0: "), "{epoch0}");
    let pid = first.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // An unfinished run exits non-zero.
    let stderr = expect_failure(
        &mut first,
        Duration::from_secs(60),
        "coordinator after SIGTERM",
    );
    assert!(
        stderr.contains("checkpoint saved") && stderr.contains("local workers exited clean=1"),
        "{stderr}"
    );
    let saved = coordinator::checkpoint::load(&ck).expect("checkpoint written on SIGTERM");
    assert!(saved.position.step > 0, "{:?}", saved.position);
    let epochs = saved.position.epoch + 1;
    let epochs_flag = epochs.to_string();

    let mut resumed = coordinator(
        &[
            &[
                "--workers",
                "1",
                "--spawn-workers",
                "--epochs",
                &epochs_flag,
                "--resume",
            ][..],
            &ck_flag[1..],
        ]
        .concat(),
        &out,
    );
    let rx = lines(&mut resumed);
    expect_success(
        &mut resumed,
        Duration::from_secs(120),
        "resumed coordinator",
    );
    // Only the checkpoint's own epoch ran: the resume path, not a fresh start.
    let trained: Vec<String> = drain(&rx)
        .into_iter()
        .filter(|l| l.starts_with("Epoch "))
        .collect();
    assert_eq!(trained.len(), 1, "{trained:?}");
    assert!(
        trained[0].starts_with(&format!("Epoch {}: ", saved.position.epoch)),
        "{trained:?}"
    );
    assert_same_as_local(
        &dir,
        &out,
        1,
        epochs,
        "resumed run differs from the uninterrupted one",
    );
}

/// `--spawn-workers` hands the run's secret to its children: with a token
/// (through their environment, not their command line) and with TLS (they
/// trust the coordinator's certificate), the one-command cluster trains and
/// every worker exits 0. The result is the same model as without either.
#[test]
fn spawned_workers_get_the_token_and_trust_the_certificate() {
    let dir = tempdir("spawned-secrets");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let cases: [(&str, Vec<&str>); 2] = [
        ("token", vec!["--token", "s3cret-token-for-the-test"]),
        (
            "tls",
            vec![
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        ),
    ];
    for (name, extra) in cases {
        let out = dir.join(format!("{name}.safetensors"));
        let args = [
            &["--workers", "2", "--spawn-workers", "--epochs", "1"][..],
            &extra,
        ]
        .concat();
        let mut coord = coordinator(&args, &out);
        let rx = lines(&mut coord);
        expect_success_with_output(
            &mut coord,
            &rx,
            Duration::from_secs(120),
            &format!("{name}: coordinator"),
        );
        let stderr = stderr_of(&mut coord);
        assert!(
            stderr.contains("local workers exited clean=2"),
            "{name}: both spawned workers exit 0: {stderr}"
        );
        assert!(
            !stderr.contains("s3cret"),
            "{name}: the token is never logged"
        );
        assert_same_as_local(&dir, &out, 2, 1, "a spawned cluster with secrets differs");
    }
}

/// When every spawned worker exits before the run could finish (here a
/// stand-in `worker` that cannot join), the coordinator fails at once with a
/// clear error instead of waiting for workers forever.
#[test]
fn spawned_workers_that_all_exit_fail_the_run_at_once() {
    let dir = tempdir("spawned-exit");
    let exe = dir.join("coordinator");
    std::fs::copy(binary("coordinator"), &exe).unwrap();
    let stand_in = dir.join("worker");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\necho 'stand-in worker: cannot join' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut coord = spawn_coordinator_command(
        Command::new(&exe),
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--spawn-workers",
        ],
        &dir.join("model.safetensors"),
    );
    // The bound only catches a hang: before the fix it waited forever.
    let stderr = expect_failure(&mut coord, Duration::from_secs(60), "coordinator");
    assert!(
        stderr.contains("every spawned worker exited before training finished"),
        "{stderr}"
    );
}
