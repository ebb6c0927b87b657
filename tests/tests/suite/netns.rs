//! Multi-host on one machine: the coordinator and the workers run in two
//! network namespaces joined by a veth pair (addresses this test assigns),
//! with a shaped link; one worker is SIGKILLed and another exits mid-step,
//! and the run still ends with the undisturbed run's model, byte for byte.
//!
//! Needs root and iproute2 (`ip netns`, `tc`); CI runs as root. Without them
//! the test says why and does nothing. The namespaces are deleted on every
//! exit path, panics included (a `Drop` guard).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::process::{wait_exit, Guard};
use integration_tests::{binary, skip};

use integration_tests::process::{coordinator_command, spawn_coordinator_command};

/// Runs `ip`/`tc` and says whether it succeeded.
fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two namespaces and the veth pair between them; removed on drop.
struct Hosts {
    coordinator: String,
    workers: String,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        run("ip", &["netns", "del", &self.coordinator]);
        run("ip", &["netns", "del", &self.workers]);
    }
}

/// Returns the guard and a description of the link shaping applied.
fn make_hosts(id: u32, subnet: u32) -> (Hosts, String) {
    let hosts = Hosts {
        coordinator: format!("ddpc{id}"),
        workers: format!("ddpw{id}"),
    };
    let (c, w) = (hosts.coordinator.as_str(), hosts.workers.as_str());
    let (vc, vw) = (format!("vc{id}"), format!("vw{id}"));
    let (ac, aw) = (
        format!("10.231.{subnet}.1/24"),
        format!("10.231.{subnet}.2/24"),
    );
    for args in [
        vec!["netns", "add", c],
        vec!["netns", "add", w],
        vec!["link", "add", &vc, "type", "veth", "peer", "name", &vw],
        vec!["link", "set", &vc, "netns", c],
        vec!["link", "set", &vw, "netns", w],
        vec!["-n", c, "addr", "add", &ac, "dev", &vc],
        vec!["-n", w, "addr", "add", &aw, "dev", &vw],
        vec!["-n", c, "link", "set", &vc, "up"],
        vec!["-n", w, "link", "set", &vw, "up"],
        vec!["-n", c, "link", "set", "lo", "up"],
        vec!["-n", w, "link", "set", "lo", "up"],
    ] {
        assert!(run("ip", &args), "ip {args:?} failed");
    }
    // Delay and loss where the kernel has netem; a rate limit (tbf) otherwise.
    let mut shaping = String::new();
    for (ns, dev) in [(c, &vc), (w, &vw)] {
        let netem = [
            "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms",
            "loss", "0.5%",
        ];
        let tbf = [
            "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
            "400mbit", "burst", "256kb", "latency", "50ms",
        ];
        shaping = if run("ip", &netem) {
            "netem delay 1ms loss 0.5% each way".into()
        } else if run("ip", &tbf) {
            "tbf 400 Mbit/s (this kernel has no netem)".into()
        } else {
            "none (no netem or tbf)".into()
        };
    }
    (hosts, shaping)
}

fn in_ns(ns: &str, program: &std::path::Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

#[test]
fn coordinator_and_workers_on_separate_hosts_survive_worker_deaths_exactly() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !root || !run("ip", &["-V"]) {
        return skip(
            "coordinator_and_workers_on_separate_hosts_survive_worker_deaths_exactly",
            "needs root and iproute2 (`ip`) for network namespaces",
        );
    }
    let id = std::process::id();
    let subnet = id % 200 + 20;
    let (hosts, shaping) = make_hosts(id, subnet);
    eprintln!("link shaping: {shaping}");
    let dir = std::env::temp_dir().join(format!("ddp-netns-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("model.safetensors");
    let listen = format!("10.231.{subnet}.1:50051");
    let flags = ["--seed", "3", "--epochs", "3"];

    let mut coord = spawn_coordinator_command(
        in_ns(&hosts.coordinator, &binary("coordinator")),
        &[
            &[
                "--listen",
                &listen,
                "--workers",
                "3",
                "--token",
                "netns-secret",
                "--shard-timeout",
                "10",
            ][..],
            &flags,
        ]
        .concat(),
        &out,
    );
    let endpoint = format!("http://{listen}");
    let worker = |name: &str, extra: &[&str]| {
        Guard(
            in_ns(&hosts.workers, &binary("worker"))
                .args([
                    "--connect",
                    &endpoint,
                    "--token",
                    "netns-secret",
                    "--name",
                    name,
                ])
                .args(extra)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut victim = worker("victim", &[]);
    let mut quitter = worker("quitter", &["--exit-at-step", "130"]);
    let mut healthy = [worker("healthy-0", &[]), worker("healthy-1", &[])];

    let mut stdout = BufReader::new(coord.0.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let mut output = Vec::new();
    for line in stdout.by_ref() {
        let epoch0 = line.starts_with("Epoch 0: ");
        output.push(line);
        if epoch0 {
            victim.0.kill().unwrap(); // SIGKILL, mid-run, across the veth
            break;
        }
    }
    output.extend(stdout);
    let status = wait_exit(&mut coord, Duration::from_secs(180), "coordinator");
    assert!(
        status.success(),
        "coordinator exited {status}; stdout {output:?}"
    );
    assert_eq!(
        wait_exit(&mut quitter, Duration::from_secs(30), "quitter").code(),
        Some(3)
    );
    for w in &mut healthy {
        assert!(wait_exit(w, Duration::from_secs(30), "worker").success());
    }

    let replay = dir.join("replay.safetensors");
    let local = coordinator_command(
        Command::new(binary("coordinator")),
        &[&["--local", "--shards", "3"][..], &flags].concat(),
        &replay,
    )
    .output()
    .unwrap();
    assert!(local.status.success());
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&replay).unwrap(),
        "multi-host run differs from the undisturbed one"
    );
    drop(hosts);
    std::fs::remove_dir_all(dir).unwrap();
}
