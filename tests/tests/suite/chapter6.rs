//! Chapter 6 (`network3.py`'s nets) on the cluster, under the same contract
//! as chapters 1 and 3: every option (conv layers, ReLU and tanh, dropout,
//! network3's L2, the expanded data) gives the same model, bit for bit, on
//! 1, 2 and 4 workers as `--local` at a fixed `--shards`; audits recompute
//! net shards bit for bit; real processes with a SIGKILLed worker and a
//! `verify` of the run's record agree too; a `--net` that cannot be built is
//! refused naming the layer.

use std::time::Duration;

use common::local::train_in_process_with_state as train_with_state;
use common::plan::{RunState, TrainingPlan};
use integration_tests::process::{expect_failure, expect_success, lines};
use integration_tests::{bits, fixture_data, max_abs_diff, plan_for, run_cluster, test_config};

use integration_tests::process::{address, coordinator, run_dir, worker_process};

/// A dropout net small enough for the MNIST slice: every layer type.
const DROPOUT_NET: &str = "conv4x5:relu,pool2,fc20:relu:dropout=0.3,softmax10:dropout=0.2";

fn net_plan(net: &str, eta: f32, lambda: f32) -> TrainingPlan {
    TrainingPlan {
        net: Some(coordinator::config::parse_net(net).unwrap()),
        sizes: vec![784, 10],
        eta,
        lambda,
        ..plan_for(1, 4, 3)
    }
}

fn plans() -> Vec<(&'static str, TrainingPlan)> {
    vec![
        ("conv, ReLU, dropout, L2", net_plan(DROPOUT_NET, 0.1, 0.1)),
        (
            "two convs, tanh and sigmoid",
            net_plan("conv3x5:tanh,pool2,conv4x3,pool2,fc12,softmax10", 0.3, 0.0),
        ),
        (
            "portable kernels",
            TrainingPlan {
                kernels: common::kernels::KernelSet::Portable,
                ..net_plan(DROPOUT_NET, 0.1, 0.1)
            },
        ),
        (
            "all together: expanded data, momentum, 2 epochs",
            TrainingPlan {
                expand_data: true,
                momentum: 0.5,
                epochs: 2,
                ..net_plan(DROPOUT_NET, 0.05, 0.1)
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chapter6_option_is_bitwise_identical_on_1_2_and_4_workers_and_equals_local() {
    let slice = fixture_data();
    for (name, plan) in plans() {
        let data = if plan.expand_data {
            std::sync::Arc::new((*slice).clone().expanded())
        } else {
            slice.clone()
        };
        let mut reference = plan.initial_network();
        let mut ref_state = RunState::new(&plan);
        let quiet = common::progress::Quiet;
        train_with_state(&mut reference, &mut ref_state, &data, &plan, quiet);
        assert!(
            reference != plan.initial_network(),
            "{name}: training moved the weights"
        );
        for workers in [1, 2, 4] {
            let mut config = test_config(plan.clone(), workers);
            // Every shard recomputed on the coordinator in one of the runs:
            // audits of net shards agree with honest workers bit for bit.
            config.audit_rate = if workers == 2 { 1.0 } else { 0.0 };
            // On 4 workers, a shard is "late" almost at once: backup copies
            // and their duplicate answers run all the time, and each
            // duplicate is decoded by the net's shapes before it is dropped.
            if workers == 4 {
                config.backup = coordinator::pool::backup::BackupPolicy {
                    factor: 0.01,
                    floor: Duration::ZERO,
                };
            }
            let summary = run_cluster(
                config,
                data.clone(),
                workers,
                Duration::from_secs(300),
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
                "{name} on {workers} workers: run state differs"
            );
            if workers == 4 {
                assert!(summary.stats.backups > 0, "{name}: no backup copy was sent");
            }
        }
    }
}

/// The same dropout net with other shard counts computes other masks'
/// sums but the same masks: 1 shard and 3 shards agree closely (not
/// bitwise: the sums are added in another order), so no sample's mask
/// depends on its shard.
#[test]
fn the_shard_count_changes_only_the_order_of_addition() {
    let data = fixture_data();
    let run = |shards: usize| {
        let plan = TrainingPlan {
            shards,
            batch_size: 12,
            ..net_plan(DROPOUT_NET, 0.1, 0.0)
        };
        let mut net = plan.initial_network();
        let mut state = RunState::new(&plan);
        let steps = common::progress::Quiet;
        train_with_state(&mut net, &mut state, &data, &plan, steps);
        net
    };
    let (one, three) = (run(1), run(3));
    let diff = max_abs_diff(&one, &three);
    assert!(
        diff < 1e-3,
        "1 and 3 shards drift apart by {diff:e}: masks depend on the shard"
    );
}

/// Real processes: a coordinator and three workers on a dropout net, one
/// worker SIGKILLed after the first epoch; the model file equals `--local`'s
/// byte for byte and `coordinator verify` replays the run's record.
#[test]
fn dropout_net_with_a_killed_worker_equals_local_and_verifies() {
    let (dir, out) = run_dir("ch6-kill");
    let flags = [
        "--net",
        DROPOUT_NET,
        "--eta",
        "0.1",
        "--lambda",
        "0.1",
        "--shards",
        "3",
        "--epochs",
        "2",
    ];
    let mut coord = coordinator(
        &[&flags[..], &["--workers", "3", "--shard-timeout", "5"]].concat(),
        &out,
    );
    let rx = lines(&mut coord);
    let addr = address(&rx);
    let mut victim = worker_process(&addr, "victim", &[]);
    let _healthy = [
        worker_process(&addr, "healthy-0", &[]),
        worker_process(&addr, "healthy-1", &[]),
    ];
    wait_for_first_epoch(&rx);
    victim.0.kill().expect("SIGKILL the victim");
    expect_success(&mut coord, Duration::from_secs(300), "coordinator");
    assert_same_as_local(&dir, &flags, &out, "the cluster's dropout model");
    let loaded = common::model_file::load(&out).unwrap();
    assert_eq!(
        loaded.net.as_ref().map(|n| n.to_string()).as_deref(),
        Some(DROPOUT_NET)
    );
    let record = out.with_extension("record.json");
    let verify = std::process::Command::new(integration_tests::binary("coordinator"))
        .arg("verify")
        .arg(&record)
        .arg("--model")
        .arg(&out)
        .arg("--data-dir")
        .arg(integration_tests::fixture_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("verified: "),
        "verify: {stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Waits for the coordinator's first epoch line: training is under way.
fn wait_for_first_epoch(rx: &std::sync::mpsc::Receiver<String>) {
    let epoch0 = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("an epoch line");
    assert!(epoch0.starts_with("Epoch 0: "), "{epoch0}");
}

/// Trains `flags` with `--local` in `dir` and checks that the model file
/// `out` is byte-identical to that run's.
fn assert_same_as_local(dir: &std::path::Path, flags: &[&str], out: &std::path::Path, what: &str) {
    let replay = dir.join("replay.safetensors");
    let mut local = coordinator(&[flags, &["--local"]].concat(), &replay);
    expect_success(&mut local, Duration::from_secs(300), "coordinator --local");
    assert!(
        std::fs::read(out).unwrap() == std::fs::read(&replay).unwrap(),
        "{what} differs from --local's"
    );
}

/// SIGKILL the coordinator of a dropout run with L2 and momentum after its
/// first epoch, resume from its checkpoint on the same address (the same
/// worker processes reconnect): the model equals `--local`'s byte for byte,
/// and resuming with another net is refused, naming the flag.
#[test]
fn dropout_net_killed_and_resumed_equals_local() {
    let (dir, out, ck) = integration_tests::process::checkpointed_run_dir("ch6-resume");
    let flags = [
        "--net",
        DROPOUT_NET,
        "--eta",
        "0.1",
        "--lambda",
        "0.1",
        "--momentum",
        "0.5",
        "--shards",
        "2",
        "--epochs",
        "3",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--checkpoint-every",
        "17",
    ];
    let mut first = coordinator(&[&flags[..], &["--workers", "2"]].concat(), &out);
    let rx = lines(&mut first);
    let addr = address(&rx);
    let mut workers = [
        worker_process(&addr, "w0", &[]),
        worker_process(&addr, "w1", &[]),
    ];
    wait_for_first_epoch(&rx);
    first.0.kill().expect("SIGKILL the coordinator");
    first.0.wait().unwrap();
    let saved =
        coordinator::checkpoint::load(&ck).expect("a checkpoint was written before the kill");
    assert!(saved.network.net.is_some(), "the checkpoint holds the net");
    assert!(saved.state.velocity.is_some(), "and its velocity");

    let resume = [
        "--listen",
        &addr,
        "--resume",
        ck.to_str().unwrap(),
        "--workers",
        "2",
    ];
    let mut second = coordinator(&[&flags[..], &resume].concat(), &out);
    expect_success(&mut second, Duration::from_secs(300), "resumed coordinator");
    integration_tests::process::expect_all_success(&mut workers, Duration::from_secs(60), "worker");
    assert_same_as_local(&dir, &flags[..12], &out, "the resumed dropout run");
    // Another net: refused, naming the flag.
    let (_d, other) = run_dir("ch6-resume-other");
    let mut wrong = coordinator(
        &[
            "--local",
            "--net",
            "fc30,softmax10",
            "--epochs",
            "3",
            "--resume",
            ck.to_str().unwrap(),
        ],
        &other,
    );
    let err = expect_failure(
        &mut wrong,
        Duration::from_secs(60),
        "resume with another net",
    );
    assert!(err.contains("--net"), "{err}");
}

#[test]
fn a_net_that_cannot_be_built_is_refused_naming_the_layer() {
    for (net, says) in [
        (
            "conv20x5,fc100,softmax10",
            "layer 1 `conv20x5`: a conv layer must be followed by pool",
        ),
        (
            "conv20x5,pool5,softmax10",
            "pool5 does not divide the 24×24 map",
        ),
        ("fc100,softmax7", "MNIST has 10 classes"),
        (
            "fc100000,fc100000,softmax10",
            "more than 100000000 parameters",
        ),
    ] {
        let (_dir, out) = run_dir("ch6-bad");
        let mut c = coordinator(&["--local", "--net", net], &out);
        let err = expect_failure(&mut c, Duration::from_secs(30), net);
        assert!(err.contains(says), "--net {net}: {err}");
    }
}

/// A trained dropout net's model file, read by numpy and safetensors with
/// only the layout the docs state (tests/python/predict_net.py), predicts
/// what the trainer predicts on every test image of the slice.
#[test]
fn a_saved_net_gives_the_same_predictions_in_python() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import numpy, safetensors"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return integration_tests::skip(
            "a_saved_net_gives_the_same_predictions_in_python",
            &format!(
                "{python} lacks numpy or safetensors; `pip install numpy safetensors` to run it"
            ),
        );
    }
    let (dir, out) = run_dir("ch6-python");
    let net = "conv4x5:relu,pool2,conv3x3:tanh,pool2,fc20:relu:dropout=0.3,softmax10:dropout=0.2";
    let mut c = coordinator(
        &["--local", "--net", net, "--eta", "0.3", "--epochs", "4"],
        &out,
    );
    expect_success(&mut c, Duration::from_secs(300), "coordinator --local");
    let (from_python, _) =
        integration_tests::python_predictions(&python, "predict_net.py", &out, &dir);
    let network = common::model_file::load(&out).unwrap();
    let test = &fixture_data().test;
    let ours = network.predict(test.inputs().view());
    let agree = from_python
        .iter()
        .zip(&ours)
        .filter(|(a, b)| a == b)
        .count();
    // numpy computes in float64: a near tie may go the other way, rarely.
    assert!(
        agree + 2 >= ours.len(),
        "{agree} of {} predictions agree",
        ours.len()
    );
    // Not a degenerate net that answers one digit for everything.
    let distinct: std::collections::BTreeSet<_> = ours.iter().collect();
    assert!(distinct.len() >= 5, "predicted digits: {distinct:?}");
}
