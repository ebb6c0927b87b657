//! Workers on the coordinator's host over a Unix domain socket:
//! `--listen unix:PATH` and `worker --connect unix:PATH`, and the default of
//! `--spawn-workers`. Same protocol, same bits as over TCP.

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::process::{lines, stderr_of, wait_exit, Guard};
use integration_tests::{binary, fixture_dir};

use crate::processes::{address, assert_same_as_local, coordinator, tempdir};
use integration_tests::process::drain;

#[test]
fn worker_processes_over_a_unix_socket_train_exactly_and_the_socket_is_removed() {
    let dir = tempdir("unix-socket");
    let out = dir.join("model.safetensors");
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
        .map(|i| {
            Guard(
                Command::new(binary("worker"))
                    .args(["--connect", &listen, "--name", &format!("unix-{i}")])
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start worker"),
            )
        })
        .collect();
    let status = wait_exit(&mut coord, Duration::from_secs(120), "coordinator");
    let output = drain(&rx);
    assert!(
        status.success(),
        "{status}: {output:?} {}",
        stderr_of(&mut coord)
    );
    for w in &mut workers {
        let status = wait_exit(w, Duration::from_secs(30), "worker");
        assert!(status.success(), "worker exited {status}: {}", stderr_of(w));
    }
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
    let dir = tempdir("spawn-unix");
    let out = dir.join("model.safetensors");
    let mut coord = Guard(
        Command::new(binary("coordinator"))
            .args([
                "--workers",
                "2",
                "--spawn-workers",
                "--epochs",
                "1",
                "--seed",
                "3",
            ])
            .arg("--data-dir")
            .arg(fixture_dir())
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start coordinator"),
    );
    let rx = lines(&mut coord);
    let addr = address(&rx);
    assert!(addr.starts_with("unix:"), "{addr}");
    let status = wait_exit(&mut coord, Duration::from_secs(120), "coordinator");
    let output = drain(&rx);
    let stderr = stderr_of(&mut coord);
    assert!(status.success(), "{status}: {output:?} {stderr}");
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
