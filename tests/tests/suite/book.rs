//! Chapter 3 of the book (`network2.py` and the two techniques it asks the
//! reader to add) on the cluster: every option keeps the exactness contract
//! (1, 2 and 4 workers and `--local` bitwise equal at a fixed `--shards`,
//! kill + resume exact with momentum), bad values are refused by name, and
//! an exported model loads with network2.py's own `load`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cost::Cost;
use common::local::train_in_process_with_state as train_with_state;
use common::network::Init;
use common::plan::{RunState, TrainingPlan};
use integration_tests::process::{
    expect_all_success, expect_failure, expect_success, lines, stderr_of, wait_exit, Guard,
};
use integration_tests::{
    binary, bits, fixture_data, max_abs_diff, plan_for, python_predictions, run_cluster,
    test_config,
};

/// One plan per option (and one with all of them), on the MNIST slice.
fn plans() -> Vec<(&'static str, TrainingPlan)> {
    let base = plan_for(1, 4, 3);
    vec![
        (
            "cross-entropy",
            TrainingPlan {
                cost: Cost::CrossEntropy,
                eta: 0.5,
                ..base.clone()
            },
        ),
        (
            "scaled init",
            TrainingPlan {
                init: Init::Scaled,
                ..base.clone()
            },
        ),
        (
            "lambda 5",
            TrainingPlan {
                lambda: 5.0,
                eta: 0.5,
                cost: Cost::CrossEntropy,
                ..base.clone()
            },
        ),
        (
            "momentum 0.9",
            TrainingPlan {
                momentum: 0.9,
                eta: 0.1,
                ..base.clone()
            },
        ),
        (
            // Tight rules and a large eta, so they fire on the slice's 200
            // validation images (eta halved after epoch 3, stop after epoch 7).
            "early stop + eta schedule",
            TrainingPlan {
                epochs: 10,
                eta: 8.0,
                early_stop: Some(2),
                eta_schedule: Some("halve:1:4".parse().unwrap()),
                ..base.clone()
            },
        ),
        (
            "all of them",
            TrainingPlan {
                epochs: 3,
                cost: Cost::CrossEntropy,
                init: Init::Scaled,
                lambda: 5.0,
                momentum: 0.5,
                eta: 0.2,
                early_stop: Some(1),
                eta_schedule: Some("halve:1:8".parse().unwrap()),
                ..base
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chapter3_option_is_bitwise_identical_on_1_2_and_4_workers_and_equals_local() {
    let data = fixture_data();
    for (name, plan) in plans() {
        let mut reference = plan.initial_network();
        let mut ref_state = RunState::new(&plan);
        let ref_reports = train_with_state(
            &mut reference,
            &mut ref_state,
            &data,
            &plan,
            common::progress::Quiet,
        );
        for workers in [1, 2, 4] {
            let summary = run_cluster(
                test_config(plan.clone(), workers),
                data.clone(),
                workers,
                Duration::from_secs(120),
                name,
            )
            .await;
            assert!(
                bits(&summary.network) == bits(&reference),
                "{name} on {workers} workers differs from --local (max diff {:e})",
                max_abs_diff(&summary.network, &reference)
            );
            assert!(
                summary.state == ref_state,
                "{name} on {workers} workers: run state (velocity, best model, stopping) differs"
            );
            assert_eq!(
                summary.reports.len(),
                ref_reports.len(),
                "{name}: epochs run"
            );
        }
        eprintln!(
            "{name}: {} epochs, bitwise equal on 1, 2, 4 workers",
            ref_reports.len()
        );
    }
    // The stopping plan did stop early and halve eta, so the rules were exercised.
    let (_, plan) = &plans()[4];
    let mut net = plan.initial_network();
    let mut state = RunState::new(plan);
    let reports = train_with_state(&mut net, &mut state, &data, plan, common::progress::Quiet);
    assert!(reports.iter().any(|r| r.verdict.halved), "eta was halved");
    assert!(
        reports.len() < plan.epochs,
        "stopped early: {} epochs",
        reports.len()
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("book-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The cluster shape of the momentum run: 2 workers, 4 shards, 6 epochs.
const MOMENTUM_RUN: &[&str] = &["--workers", "2", "--shards", "4", "--epochs", "6"];

/// Chapter 3 flags used by the process tests: every option that changes the weights.
const CH3: &[&str] = &[
    "--cost",
    "cross-entropy",
    "--init-weights",
    "scaled",
    "--lambda",
    "1",
    "--momentum",
    "0.8",
    "--eta",
    "0.2",
    "--early-stop",
    "3",
    "--eta-schedule",
    "halve:1:64",
    "--seed",
    "3",
];

fn coordinator(args: &[&str], out: &Path) -> Guard {
    integration_tests::process::spawn_coordinator(&[&["--progress", "none"], args].concat(), out)
}

fn worker(addr: &str) -> Guard {
    let child = Command::new(binary("worker"))
        .args(["--connect", &format!("http://{addr}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker");
    Guard(child)
}

/// SIGKILL the coordinator of a momentum + L2 + cross-entropy + scaled-init
/// run with early stopping and an eta schedule after its second epoch,
/// resume from the checkpoint: the model (and the best validation epoch's
/// model) are byte-identical to `--local`'s. Resuming with another
/// `--momentum` is refused, naming the flag.
#[test]
fn momentum_run_killed_and_resumed_equals_local_byte_for_byte() {
    let dir = tempdir("momentum");
    let (out, ck) = (dir.join("model.safetensors"), dir.join("ck.safetensors"));
    let run = |extra: &[&str]| -> Vec<String> {
        [
            CH3,
            MOMENTUM_RUN,
            &[
                "--checkpoint",
                ck.to_str().unwrap(),
                "--checkpoint-every",
                "13",
            ],
            extra,
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = run(&["--listen", "127.0.0.1:0"]);
    let mut first = coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>(), &out);
    let rx = lines(&mut first);
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("address line");
    let addr = line
        .strip_prefix("Listening on ")
        .expect("Listening on ADDR")
        .to_string();
    let mut workers = [worker(&addr), worker(&addr)];
    for want in ["Epoch 0: ", "Epoch 1: "] {
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("epoch lines");
            if l.starts_with(want) {
                break;
            }
        }
    }
    first.0.kill().expect("SIGKILL the coordinator");
    first.0.wait().unwrap();
    let saved =
        common::model_file::load_part(&ck, "velocity.", &common::Network::zeros(&[784, 30, 10]))
            .unwrap();
    assert!(saved.is_some(), "the checkpoint carries the velocity");

    // Another momentum: refused, naming the flag.
    let mut wrong = coordinator(
        &[
            &CH3.iter()
                .map(|&a| if a == "0.8" { "0.5" } else { a })
                .collect::<Vec<_>>()[..],
            MOMENTUM_RUN,
            &["--resume", ck.to_str().unwrap()],
        ]
        .concat(),
        &out,
    );
    let err = expect_failure(
        &mut wrong,
        Duration::from_secs(60),
        "coordinator with another --momentum",
    );
    assert!(
        err.contains("made with --momentum 0.8, but the flags say 0.5"),
        "{err}"
    );

    let args = run(&["--listen", &addr, "--resume", ck.to_str().unwrap()]);
    let mut second = coordinator(&args.iter().map(String::as_str).collect::<Vec<_>>(), &out);
    expect_success(&mut second, Duration::from_secs(120), "resumed coordinator");
    expect_all_success(&mut workers, Duration::from_secs(60), "worker");

    let replay = dir.join("replay.safetensors");
    let mut local = coordinator(
        &[CH3, &["--local", "--shards", "4", "--epochs", "6"]].concat(),
        &replay,
    );
    expect_success(&mut local, Duration::from_secs(120), "coordinator --local");
    for (a, b) in [
        ("model.safetensors", "replay.safetensors"),
        ("model.best.safetensors", "replay.best.safetensors"),
    ] {
        assert!(
            std::fs::read(dir.join(a)).unwrap() == std::fs::read(dir.join(b)).unwrap(),
            "{a}: the resumed cluster run differs from --local"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_chapter3_values_are_refused_with_the_flag_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--lambda", "-1"], "--lambda -1: must be finite and >= 0"),
        (&["--momentum", "1"], "--momentum 1: must be in [0, 1)"),
        (
            &["--momentum", "-0.1"],
            "--momentum -0.1: must be in [0, 1)",
        ),
        (
            &["--early-stop", "0"],
            "--early-stop 0: must be at least 1 epoch",
        ),
        (
            &["--eta-schedule", "halve:ten:128"],
            "--eta-schedule \"halve:ten:128\": N \"ten\" is not a whole number",
        ),
        (&["--eta-schedule", "halve:10"], "expected halve:N:R"),
        (&["--cost", "hinge"], "use quadratic or cross-entropy"),
        (&["--init-weights", "xavier"], "use large or scaled"),
        (&["--preset", "ch9"], "ch3-l2"),
    ];
    let dir = tempdir("badflags");
    for (i, (flags, want)) in cases.iter().enumerate() {
        let mut c = coordinator(
            &[&["--local"][..], flags].concat(),
            &dir.join("m.safetensors"),
        );
        let err = expect_failure(&mut c, Duration::from_secs(30), "coordinator");
        assert!(err.contains(want), "case {i} {flags:?}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A `--preset` prints the flags it stands for and explicit flags win; the
/// model exported as network2 JSON loads with network2.py's own `load`
/// (`tests/python/network2_load.py`) and predicts exactly what the trainer
/// does on the slice's 200 test images.
#[test]
fn preset_run_exported_as_network2_json_predicts_the_same_in_network2_py() {
    let dir = tempdir("export");
    let out = dir.join("model.safetensors");
    let mut run = coordinator(
        &[
            "--local", "--preset", "ch3-l2", "--epochs", "2", "--seed", "3", "--shards", "4",
        ],
        &out,
    );
    let status = wait_exit(&mut run, Duration::from_secs(120), "preset run");
    let err = stderr_of(&mut run);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("preset ch3-l2: --sizes 784,30,10 --epochs 30 --eta 0.5 --cost cross-entropy --init-weights scaled --lambda 5"),
        "{err}"
    );
    let stdout = {
        let mut s = String::new();
        std::io::Read::read_to_string(run.0.stdout.as_mut().unwrap(), &mut s).unwrap();
        s
    };
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("Epoch ")).count(),
        2,
        "--epochs 2 overrides the preset's 30: {stdout}"
    );

    let json = dir.join("model.json");
    let export = Command::new(binary("coordinator"))
        .args([
            "export",
            "--format",
            "network2-json",
            "--cost",
            "cross-entropy",
            "--model",
        ])
        .arg(&out)
        .arg("--out")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(
        text.starts_with("{\"sizes\": [784, 30, 10], \"weights\": [[["),
        "{}",
        &text[..80]
    );
    assert!(text.ends_with("\"cost\": \"CrossEntropyCost\"}"));

    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import numpy"]).output();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match probe {
        Ok(o) if o.status.success() => {}
        other => {
            let why = format!("{python} cannot import numpy ({other:?})");
            assert!(!ci, "CI=true: {why}; .ci/run installs numpy");
            eprintln!("SKIPPED: {why}; `pip install numpy` to run it");
            return;
        }
    }
    let (from_python, stderr) = python_predictions(&python, "network2_load.py", &json, &dir);
    assert_eq!(stderr.trim(), "CrossEntropyCost");
    let network = common::model_file::load(&out).unwrap();
    assert_eq!(from_python.len(), 200);
    assert_eq!(
        from_python,
        network.predict(fixture_data().test.inputs().view())
    );
    std::fs::remove_dir_all(dir).unwrap();
}
