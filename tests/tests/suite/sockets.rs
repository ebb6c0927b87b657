//! Workers on the coordinator's host over a Unix domain socket:
//! `--listen unix:PATH` and `worker --connect unix:PATH`, and the default of
//! `--spawn-workers`. Same protocol, same bits as over TCP.

use std::time::Duration;

use integration_tests::process::{
    expect_all_success, expect_success_with_output, lines, stderr_of, Guard,
};

use integration_tests::process::{
    address, assert_same_as_local, coordinator, run_dir, spawn_coordinator, worker_at,
};

#[test]
fn worker_processes_over_a_unix_socket_train_exactly_and_the_socket_is_removed() {
    let (dir, out) = run_dir("unix-socket");
    let socket = dir.join("ddp.sock");
    let listen = format!("unix:{}", socket.display());
    let mut coord = coordinator(
        &["--listen", &listen, "--workers", "2", "--epochs", "2"],
        &out,
    );
    let rx = lines(&mut coord);
    assert_eq!(address(&rx), listen);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only this user may connect");
    // worker_process prefixes http://; a Unix address is passed as it is.
    let mut workers: Vec<Guard> = (0..2)
        .map(|i| worker_at(&listen, &format!("unix-{i}"), &[]))
        .collect();
    expect_success_with_output(&mut coord, &rx, Duration::from_secs(120), "coordinator");
    expect_all_success(&mut workers, Duration::from_secs(30), "worker");
    assert!(!socket.exists(), "the coordinator removes its socket file");
    assert_same_as_local(
        &dir,
        &out,
        2,
        2,
        "the Unix-socket cluster differs from --local",
    );
}

#[test]
fn spawned_workers_use_a_private_unix_socket_by_default() {
    let (dir, out) = run_dir("spawn-unix");
    // No --listen: spawned workers get a Unix socket of their own.
    let mut coord = spawn_coordinator(
        &[
            "--workers",
            "2",
            "--spawn-workers",
            "--epochs",
            "1",
            "--seed",
            "3",
        ],
        &out,
    );
    let rx = lines(&mut coord);
    let addr = address(&rx);
    assert!(addr.starts_with("unix:"), "{addr}");
    expect_success_with_output(&mut coord, &rx, Duration::from_secs(120), "coordinator");
    let stderr = stderr_of(&mut coord);
    assert!(stderr.contains("local workers exited clean=2"), "{stderr}");
    assert!(!std::path::Path::new(&addr["unix:".len()..]).exists());
    assert_same_as_local(
        &dir,
        &out,
        2,
        1,
        "the spawned Unix-socket cluster differs from --local",
    );
}
