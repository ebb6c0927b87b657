//! A connection flood under a low file limit: the coordinator binary runs
//! with `RLIMIT_NOFILE` at 256 (soft and hard, so it cannot raise it), and
//! 600 dashboard clients that open an event stream and never read connect
//! first. Workers must still join, the checkpoint and the model must still
//! be written, and the coordinator must not spin while the flood is open.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::process::{lines, wait_exit, Guard};
use integration_tests::{binary, TempDir};

use integration_tests::process::{coordinator_command, worker_process};

/// The coordinator's file limit.
const LIMIT: u64 = 256;
/// Flooding clients: more than the limit.
const CLIENTS: usize = 600;

/// CPU seconds the process `pid` has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name's closing parenthesis: fields 3.., utime and stime are 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Peak resident set of `pid`, in MB.
fn peak_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[test]
fn a_dashboard_flood_under_a_low_file_limit_locks_no_worker_out() {
    let dir = TempDir::new("flood");
    let (out, checkpoint) = (dir.join("m.safetensors"), dir.join("ck.safetensors"));
    let mut command = Command::new(binary("coordinator"));
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--dashboard",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--epochs",
        "2",
        "--progress",
        "none",
    ];
    let mut command = coordinator_command(command, &args, &out);
    command.arg("--checkpoint").arg(&checkpoint);
    let mut coord = Guard(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = lines(&mut coord);
    let (mut grpc, mut dashboard) = (None, None);
    while grpc.is_none() || dashboard.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the coordinator's addresses");
        if let Some(a) = line.strip_prefix("Listening on ") {
            grpc = Some(a.to_string());
        }
        if let Some(a) = line.strip_prefix("Dashboard on http://") {
            dashboard = Some(a.trim_end_matches('/').to_string());
        }
    }
    let (grpc, dashboard) = (grpc.unwrap(), dashboard.unwrap());
    let to: std::net::SocketAddr = dashboard.parse().unwrap();
    // A bound on each connect, and an end to the flood after 3 failures: a
    // server that stops accepting fills its queue, and connects then time out.
    let mut flood = Vec::new();
    let mut failures = 0;
    while flood.len() < CLIENTS && failures < 3 {
        let head = format!("GET /events HTTP/1.1\r\nHost: {dashboard}\r\n\r\n");
        let connected = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1));
        match connected.and_then(|mut s| s.write_all(head.as_bytes()).map(|()| s)) {
            Ok(s) => flood.push(s),
            Err(_) => failures += 1,
        }
    }
    // CPU over a fixed window while the flood is open and no worker has joined
    // (a measurement window, not a wait): an accept loop retrying a full
    // descriptor table would burn a whole core.
    let window = Duration::from_secs(2);
    let (cpu0, t0) = (cpu_seconds(coord.0.id()), Instant::now());
    std::thread::sleep(window);
    let busy = (cpu_seconds(coord.0.id()) - cpu0) / t0.elapsed().as_secs_f64();
    let peak = peak_mb(coord.0.id());
    let mut workers = [
        worker_process(&grpc, "w0", &[]),
        worker_process(&grpc, "w1", &[]),
    ];
    let status = wait_exit(&mut coord, Duration::from_secs(120), "coordinator");
    let stderr = integration_tests::process::stderr_of(&mut coord);
    assert!(
        status.success(),
        "coordinator failed under the flood: {stderr}"
    );
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30), "worker").success());
    }
    assert!(
        out.is_file() && checkpoint.is_file(),
        "model and checkpoint saved"
    );
    println!(
        "{} of {CLIENTS} flooding clients connected; coordinator CPU while flooded {:.0}% of a core, peak RSS {peak:.1} MB",
        flood.len(),
        busy * 100.0
    );
    assert!(
        busy < 0.5,
        "the coordinator used {:.0}% of a core while flooded",
        busy * 100.0
    );
    drop(flood);
}
